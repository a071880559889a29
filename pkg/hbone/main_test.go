package hbone

import (
	"log/slog"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// Refusals are logged at Info/Warn by design; keep test output to what failed.
	if os.Getenv("HBONE_TEST_LOG") == "" {
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	}
	os.Exit(m.Run())
}
