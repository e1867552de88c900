package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"time"
)

// fault is one misbehaviour and the requests it applies to.
type fault struct {
	Path       string `json:"path,omitempty"`   // regexp on the URL path
	Method     string `json:"method,omitempty"` // empty: any
	Watch      *bool  `json:"watch,omitempty"`  // only watches, or only not
	Action     string `json:"action"`
	Status     int    `json:"status,omitempty"`
	RetryAfter int    `json:"retryAfter,omitempty"` // seconds
	After      string `json:"after,omitempty"`      // into a watch
	Delay      string `json:"delay,omitempty"`
	Count      int    `json:"count,omitempty"` // 0: every match
	Applied    int    `json:"applied"`

	re    *regexp.Regexp
	after time.Duration
	delay time.Duration
}

type faults struct {
	mu      sync.Mutex
	list    []*fault
	watches map[*watchBody]struct{}
}

func (f *fault) compile() error {
	var err error
	if f.re, err = regexp.Compile(f.Path); err != nil {
		return err
	}
	if f.After != "" {
		if f.after, err = time.ParseDuration(f.After); err != nil {
			return err
		}
	}
	if f.Delay != "" {
		if f.delay, err = time.ParseDuration(f.Delay); err != nil {
			return err
		}
	}
	switch f.Action {
	case "status":
		if f.Status < 400 || f.Status > 599 {
			return fmt.Errorf("status %d: want 400..599", f.Status)
		}
	case "error-event", "cut":
		if f.Watch == nil || !*f.Watch {
			return fmt.Errorf("%s applies to watches: set \"watch\": true", f.Action)
		}
	case "delay":
		if f.delay <= 0 {
			return errors.New("delay: set \"delay\"")
		}
	default:
		return fmt.Errorf("unknown action %q", f.Action)
	}
	return nil
}

func isWatch(r *http.Request) bool {
	w := r.URL.Query().Get("watch")
	return w == "1" || w == "true"
}

// match returns the first fault that applies to r, counting it applied.
func (fs *faults) match(r *http.Request) *fault {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, f := range fs.list {
		if f.Count > 0 && f.Applied >= f.Count {
			continue
		}
		if f.Method != "" && f.Method != r.Method {
			continue
		}
		if f.Watch != nil && *f.Watch != isWatch(r) {
			continue
		}
		if !f.re.MatchString(r.URL.Path) {
			continue
		}
		f.Applied++
		return f
	}
	return nil
}

// before applies f ahead of the upstream request: it returns the request
// to send on, or nil when it answered.
func (f *fault) before(w http.ResponseWriter, r *http.Request) *http.Request {
	switch f.Action {
	case "delay":
		select {
		case <-time.After(f.delay):
		case <-r.Context().Done():
			return nil
		}
	case "status":
		if f.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(f.RetryAfter))
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(f.Status)
		json.NewEncoder(w).Encode(status(f.Status))
		return nil
	case "error-event", "cut":
		// marked for wrapWatch, which sees the response
		r = r.WithContext(withFault(r.Context(), f))
		// the injected event is JSON: ask upstream for JSON too
		r.Header.Set("Accept", "application/json")
	}
	return r
}

// status is the metav1.Status the API server itself would send.
func status(code int) map[string]any {
	reasons := map[int]string{410: "Expired", 429: "TooManyRequests",
		500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}
	reason, ok := reasons[code]
	if !ok {
		reason = "Unknown"
	}
	msg := "lss-faultproxy: injected " + http.StatusText(code)
	if code == 410 {
		msg = "too old resource version (lss-faultproxy)"
	}
	return map[string]any{"kind": "Status", "apiVersion": "v1",
		"metadata": map[string]any{}, "status": "Failure",
		"message": msg, "reason": reason, "code": code}
}

func (fs *faults) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /faults", func(w http.ResponseWriter, r *http.Request) {
		fs.mu.Lock()
		defer fs.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(append([]*fault{}, fs.list...))
	})
	mux.HandleFunc("POST /faults", func(w http.ResponseWriter, r *http.Request) {
		var f fault
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<16))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.Applied = 0
		if err := f.compile(); err != nil {
			http.Error(w, err.Error(), http.StatusUnprocessableEntity)
			return
		}
		fs.mu.Lock()
		fs.list = append(fs.list, &f)
		fs.mu.Unlock()
		w.WriteHeader(http.StatusCreated)
	})
	mux.HandleFunc("DELETE /faults", func(w http.ResponseWriter, r *http.Request) {
		fs.mu.Lock()
		fs.list = nil
		fs.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /cut", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d\n", fs.cutAll())
	})
	return mux
}
