package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"
)

type faultKey struct{}

func withFault(ctx context.Context, f *fault) context.Context {
	return context.WithValue(ctx, faultKey{}, f)
}

// errCut ends a watch's body with an error, which makes ReverseProxy
// abort the client's stream (HTTP/2 RST_STREAM, HTTP/1.1 a closed
// connection without the last chunk): a dropped connection, as the
// client sees it.
var errCut = errors.New("lss-faultproxy: watch cut")

// watchBody passes a watch's events through whole lines at a time, so
// that it can be ended between two events: cut, or with an ERROR event
// carrying a 410 Status and then a clean end.
type watchBody struct {
	upstream io.ReadCloser
	buf      [32 << 10]byte
	partial  []byte // bytes after the last newline read
	out      []byte // whole lines not yet returned
	err      error  // returned once out is empty

	once    sync.Once
	stopped chan struct{}
	reason  error // errCut or io.EOF (ERROR event), set before stopped closes
	forget  func()
}

// wrapWatch wraps every successful watch response, so that /cut reaches
// any open watch, and arms the fault the request was marked with.
func (fs *faults) wrapWatch(resp *http.Response) error {
	if !isWatch(resp.Request) || resp.StatusCode != http.StatusOK {
		return nil
	}
	wb := &watchBody{upstream: resp.Body, stopped: make(chan struct{})}
	fs.mu.Lock()
	if fs.watches == nil {
		fs.watches = map[*watchBody]struct{}{}
	}
	fs.watches[wb] = struct{}{}
	fs.mu.Unlock()
	wb.forget = func() {
		fs.mu.Lock()
		delete(fs.watches, wb)
		fs.mu.Unlock()
	}
	resp.Body = wb
	if f, ok := resp.Request.Context().Value(faultKey{}).(*fault); ok {
		reason := io.EOF
		if f.Action == "cut" {
			reason = errCut
		}
		time.AfterFunc(f.after, func() { wb.stop(reason) })
	}
	return nil
}

func (fs *faults) cutAll() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for wb := range fs.watches {
		go wb.stop(errCut)
	}
	return len(fs.watches)
}

// stop ends the watch: closing upstream's body wakes a blocked Read.
func (wb *watchBody) stop(reason error) {
	wb.once.Do(func() {
		wb.reason = reason
		close(wb.stopped)
		wb.upstream.Close()
	})
}

func (wb *watchBody) Read(p []byte) (int, error) {
	for len(wb.out) == 0 {
		if wb.err != nil {
			return 0, wb.err
		}
		n, err := wb.upstream.Read(wb.buf[:])
		wb.partial = append(wb.partial, wb.buf[:n]...)
		if i := bytes.LastIndexByte(wb.partial, '\n'); i >= 0 {
			wb.out = append(wb.out, wb.partial[:i+1]...)
			wb.partial = append([]byte(nil), wb.partial[i+1:]...)
		}
		if err == nil {
			continue
		}
		select {
		case <-wb.stopped:
			wb.err = wb.reason
			if wb.reason == io.EOF {
				ev, _ := json.Marshal(struct {
					Type   string         `json:"type"`
					Object map[string]any `json:"object"`
				}{"ERROR", status(http.StatusGone)})
				wb.out = append(wb.out, append(ev, '\n')...)
			}
		default:
			wb.err = err
		}
	}
	n := copy(p, wb.out)
	wb.out = wb.out[n:]
	return n, nil
}

func (wb *watchBody) Close() error {
	wb.forget()
	wb.stop(io.ErrClosedPipe)
	return nil
}
