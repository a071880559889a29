// Package daemon holds the process scaffolding every ambit component shares:
// common flags, structured logging, a health endpoint and graceful shutdown on
// SIGTERM/SIGINT.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Options are the flags every component accepts.
type Options struct {
	HealthAddr      string
	LogLevel        string
	LogFormat       string
	ShutdownTimeout time.Duration
}

// RegisterFlags binds the shared flags to fs with defaults suitable for name.
func (o *Options) RegisterFlags(fs *flag.FlagSet, defaultHealthAddr string) {
	fs.StringVar(&o.HealthAddr, "health-addr", defaultHealthAddr, "address of the health endpoint (/healthz, /readyz); empty disables it")
	fs.StringVar(&o.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.LogFormat, "log-format", "text", "log format: text or json")
	fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", 15*time.Second, "how long to drain on SIGTERM before exiting")
}

// NewLogger builds the slog logger described by o, writing to w.
func (o *Options) NewLogger(w io.Writer, component string) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.LogLevel)); err != nil {
		return nil, fmt.Errorf("invalid --log-level %q: %w", o.LogLevel, err)
	}
	hopts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch strings.ToLower(o.LogFormat) {
	case "text":
		h = slog.NewTextHandler(w, hopts)
	case "json":
		h = slog.NewJSONHandler(w, hopts)
	default:
		return nil, fmt.Errorf("invalid --log-format %q: want text or json", o.LogFormat)
	}
	return slog.New(h).With("component", component), nil
}

// Process is what a running component sees of the scaffolding.
type Process struct {
	Log   *slog.Logger
	ready atomic.Bool
	// shutdownTimeout is how long the body has to drain once ctx ends.
	shutdownTimeout time.Duration
}

// ShutdownTimeout is how long the body has to return once its context
// ends (--shutdown-timeout): its drain must fit inside it.
func (p *Process) ShutdownTimeout() time.Duration { return p.shutdownTimeout }

// SetReady flips /readyz; components call it once they can serve.
func (p *Process) SetReady(ready bool) { p.ready.Store(ready) }

// RunFunc is a component's body. It must return when ctx is cancelled,
// after draining; the returned error is the process outcome.
type RunFunc func(ctx context.Context, p *Process) error

// Main parses args, sets up logging, health and signals, runs body, and
// returns the process exit code. Components call os.Exit(daemon.Main(...)).
func Main(component string, args []string, configure func(fs *flag.FlagSet), body RunFunc) int {
	fs := flag.NewFlagSet(component, flag.ContinueOnError)
	var opts Options
	opts.RegisterFlags(fs, defaultHealthAddr(component))
	if configure != nil {
		configure(fs)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	log, err := opts.NewLogger(os.Stderr, component)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := Run(ctx, opts, log, body); err != nil {
		log.Error("exiting with error", "err", err)
		return 1
	}
	log.Info("stopped cleanly")
	return 0
}

// Run serves the health endpoint and runs body until ctx is done, then gives
// body up to opts.ShutdownTimeout to drain.
func Run(ctx context.Context, opts Options, log *slog.Logger, body RunFunc) error {
	p := &Process{Log: log, shutdownTimeout: opts.ShutdownTimeout}
	var health *http.Server
	if opts.HealthAddr != "" {
		ln, err := net.Listen("tcp", opts.HealthAddr)
		if err != nil {
			return fmt.Errorf("health endpoint: %w", err)
		}
		health = &http.Server{Handler: p.healthHandler(), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := health.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("health endpoint failed", "err", err)
			}
		}()
		log.Info("health endpoint listening", "addr", ln.Addr().String())
	}

	bodyCtx, cancelBody := context.WithCancel(context.Background())
	defer cancelBody()
	done := make(chan error, 1)
	go func() { done <- body(bodyCtx, p) }()

	var result error
	select {
	case result = <-done:
	case <-ctx.Done():
		log.Info("shutdown requested, draining", "timeout", opts.ShutdownTimeout)
		p.SetReady(false)
		cancelBody()
		select {
		case result = <-done:
		case <-time.After(opts.ShutdownTimeout):
			result = fmt.Errorf("drain did not finish within %s", opts.ShutdownTimeout)
		}
	}
	if health != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = health.Shutdown(sctx)
	}
	return result
}

func (p *Process) healthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !p.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	return mux
}

// Default health ports follow Istio's conventions where they exist.
func defaultHealthAddr(component string) string {
	switch component {
	case "ztunnel":
		return ":15021"
	case "waypoint":
		return ":15021"
	case "istiod-lite":
		return ":8080"
	}
	return ""
}
