package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// DefaultStatePath is where the ztunnel keeps the namespace state file.
const DefaultStatePath = "/var/run/ambit/ambient-namespaces.json"

// StateVersion is the version of the namespace state file format.
const StateVersion = 1

// maxStateSize bounds the state file the plugin reads.
const maxStateSize = 4 << 20

// NamespaceState is what the ztunnel tells the CNI plugin about namespaces,
// for the times the plugin cannot reach the ztunnel: the plugin fails the ADD
// of a pod whose namespace is listed (it must be captured, so its sandbox must
// not start without capture) and lets every other pod through.
type NamespaceState struct {
	Version int `json:"version"`
	// Updated is when the ztunnel wrote the file.
	Updated time.Time `json:"updated"`
	// Ambient lists the namespaces labelled istio.io/dataplane-mode=ambient,
	// sorted.
	Ambient []string `json:"ambientNamespaces"`
}

// IsAmbient reports whether namespace is listed.
func (s *NamespaceState) IsAmbient(namespace string) bool {
	_, found := slices.BinarySearch(s.Ambient, namespace)
	return found
}

// WriteNamespaceState atomically replaces the state file at path (a temporary
// file in the same directory, then rename) with the given ambient namespaces.
// The directory is created (0755) if missing; the file is 0644.
func WriteNamespaceState(path string, ambient []string) error {
	st := NamespaceState{Version: StateVersion, Updated: time.Now().UTC(), Ambient: slices.Clone(ambient)}
	slices.Sort(st.Ambient)
	st.Ambient = slices.Compact(st.Ambient)
	if st.Ambient == nil {
		st.Ambient = []string{}
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode namespace state: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write namespace state: %w", err)
	}
	f, err := os.CreateTemp(dir, ".ambient-namespaces-*.tmp")
	if err != nil {
		return fmt.Errorf("write namespace state: %w", err)
	}
	tmp := f.Name()
	_, werr := f.Write(append(data, '\n'))
	cerr := f.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp, 0o644)); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write namespace state %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write namespace state: %w", err)
	}
	return nil
}

// ReadNamespaceState reads the state file at path.
func ReadNamespaceState(path string) (*NamespaceState, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read namespace state: %w", err)
	}
	defer f.Close()
	var st NamespaceState
	lr := &limitReader{f: f, n: maxStateSize}
	if err := json.NewDecoder(lr).Decode(&st); err != nil {
		return nil, fmt.Errorf("read namespace state %s: %w", path, err)
	}
	if st.Version != StateVersion {
		return nil, fmt.Errorf("read namespace state %s: unsupported version %d", path, st.Version)
	}
	slices.Sort(st.Ambient)
	return &st, nil
}

type limitReader struct {
	f *os.File
	n int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, fmt.Errorf("larger than %d bytes", maxStateSize)
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.f.Read(p)
	l.n -= int64(n)
	return n, err
}
