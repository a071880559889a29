package workloadv1

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

var jsonOptions = protojson.MarshalOptions{UseProtoNames: true}

// ReadableJSON renders a workload API message as JSON for people (debug
// and admin views): proto field names, and addresses as IP strings rather
// than the base64 of their bytes.
func ReadableJSON(m proto.Message) (json.RawMessage, error) {
	b, err := jsonOptions.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("marshal %T: %w", m, err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("re-read %T: %w", m, err)
	}
	out, err := json.Marshal(readableIPs("", v))
	if err != nil {
		return nil, fmt.Errorf("marshal %T: %w", m, err)
	}
	return out, nil
}

// readableIPs rewrites the values of "address"/"addresses" fields that
// decode to 4 or 16 bytes as IP strings.
func readableIPs(key string, v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = readableIPs(k, e)
		}
	case []any:
		for i, e := range t {
			t[i] = readableIPs(key, e)
		}
	case string:
		if key != "address" && key != "addresses" {
			return t
		}
		if raw, err := base64.StdEncoding.DecodeString(t); err == nil {
			if ip, ok := netip.AddrFromSlice(raw); ok {
				return ip.Unmap().String()
			}
		}
	}
	return v
}
