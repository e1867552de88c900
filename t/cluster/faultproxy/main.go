// Command lss-faultproxy sits between a client and lss-cluster's API
// server and misbehaves on demand, for the cases a real API server will
// not produce when a test wants them: a watch cut, 410 Gone at a watch's
// start or as an ERROR event inside it, 429 with Retry-After, 500, delay.
//
// It terminates TLS with the harness's serving certificate and asks for
// the client's certificate; upstream it authenticates as the harness's
// admin and impersonates the client's user and groups, so RBAC sees the
// client, not the proxy. Requests with a bearer token go upstream as they
// came, without a client certificate.
//
// Faults are set through a plain HTTP control endpoint on loopback:
//
//	POST   /faults  {"path": "regexp", "method": "GET", "watch": true,
//	                 "action": "status|error-event|cut|delay",
//	                 "status": 429, "retryAfter": 1, "after": "200ms",
//	                 "delay": "1s", "count": 1}
//	GET    /faults  the faults and how often each was applied
//	DELETE /faults  clear them
//	POST   /cut     cut every watch open now
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

func main() {
	dir := flag.String("dir", "", "lss-cluster's directory (certificates, ready file)")
	port := flag.Int("port", 0, "proxy port on 127.0.0.1 (0: a free one)")
	ctlPort := flag.Int("control-port", 0, "control port on 127.0.0.1 (0: a free one)")
	flag.Parse()
	if *dir == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: lss-faultproxy --dir DIR [--port N] [--control-port N]")
		os.Exit(2)
	}
	if err := run(*dir, *port, *ctlPort); err != nil {
		fmt.Fprintln(os.Stderr, "lss-faultproxy:", err)
		os.Exit(1)
	}
}

func run(dir string, port, ctlPort int) error {
	path := func(name string) string { return filepath.Join(dir, name) }
	ready, err := os.ReadFile(path("ready"))
	if err != nil {
		return fmt.Errorf("lss-cluster not ready: %w", err)
	}
	upstream, err := url.Parse(strings.TrimSpace(string(ready)))
	if err != nil {
		return err
	}
	ca, err := os.ReadFile(path("ca.crt"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return fmt.Errorf("no certificate in %s", path("ca.crt"))
	}
	serving, err := tls.LoadX509KeyPair(path("apiserver.crt"), path("apiserver.key"))
	if err != nil {
		return err
	}
	admin, err := tls.LoadX509KeyPair(path("admin.crt"), path("admin.key"))
	if err != nil {
		return err
	}

	faults := &faults{}
	p := &proxy{
		faults:   faults,
		asAdmin:  reverseProxy(upstream, pool, &admin, faults),
		asClient: reverseProxy(upstream, pool, nil, faults),
	}
	ln, err := tls.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port), &tls.Config{
		Certificates: []tls.Certificate{serving},
		ClientCAs:    pool,
		ClientAuth:   tls.VerifyClientCertIfGiven,
		NextProtos:   []string{"h2", "http/1.1"},
	})
	if err != nil {
		return err
	}
	ctl, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", ctlPort))
	if err != nil {
		ln.Close()
		return err
	}
	errs := make(chan error, 2)
	go func() { errs <- http.Serve(ln, p) }()
	go func() { errs <- http.Serve(ctl, faults.handler()) }()

	proxyURL := "https://" + ln.Addr().String()
	ctlURL := "http://" + ctl.Addr().String()
	state := path("faultproxy")
	if err := os.WriteFile(state+".tmp", []byte(proxyURL+"\n"+ctlURL+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(state+".tmp", state); err != nil {
		return err
	}
	defer os.Remove(state)
	fmt.Printf("ready %s control=%s upstream=%s\n", proxyURL, ctlURL, upstream)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
		return nil
	case err := <-errs:
		return err
	}
}

// maxBody is well above the API server's own limit on a request (3 MiB).
const maxBody = 16 << 20

// proxy sends each request upstream under the client's identity.
type proxy struct {
	faults   *faults
	asAdmin  *httputil.ReverseProxy
	asClient *httputil.ReverseProxy
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Identity comes from the verified certificate only; never from the
	// client's own headers.
	for k := range r.Header {
		if strings.HasPrefix(k, "Impersonate-") {
			r.Header.Del(k)
		}
	}
	// A request body is read whole before it goes upstream: an HTTP/2
	// client (Go's) stops sending its body once a >299 response arrives,
	// and a streamed body would then hold the upstream stream open, and
	// with it the end of the response the client waits for.
	if r.Body != nil && r.Body != http.NoBody {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
		if err != nil {
			return
		}
		if len(body) > maxBody {
			http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
	}
	if f := p.faults.match(r); f != nil {
		if r = f.before(w, r); r == nil {
			return
		}
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		who := r.TLS.PeerCertificates[0].Subject
		r.Header.Set("Impersonate-User", who.CommonName)
		for _, g := range who.Organization {
			r.Header.Add("Impersonate-Group", g)
		}
		p.asAdmin.ServeHTTP(w, r)
		return
	}
	p.asClient.ServeHTTP(w, r)
}

func reverseProxy(upstream *url.URL, pool *x509.CertPool, cert *tls.Certificate,
	f *faults) *httputil.ReverseProxy {
	cfg := &tls.Config{RootCAs: pool}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(upstream)
			r.Out.Host = upstream.Host
		},
		Transport: &http.Transport{
			TLSClientConfig:   cfg,
			ForceAttemptHTTP2: true,
		},
		// A watch's events reach the client as they come.
		FlushInterval:  -1,
		ModifyResponse: f.wrapWatch,
	}
}
