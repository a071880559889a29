package ambient

import (
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The typed Istio clients decode `spec` leniently: unknown fields (a typo,
// a field from a newer Istio) are dropped without a word, so a policy can
// silently mean less than it says. These decoders are strict: a caller that
// watches the policies as unstructured or raw JSON gets an error for them
// instead, and can report it on the object.

// DecodeAuthorizationPolicy decodes a security.istio.io AuthorizationPolicy
// from JSON, rejecting unknown fields in spec. The error is a *PolicyError
// when the object's name is known.
func DecodeAuthorizationPolicy(data []byte) (*securityv1.AuthorizationPolicy, error) {
	p := &securityv1.AuthorizationPolicy{}
	if err := decodeStrict(data, &p.TypeMeta, &p.ObjectMeta, &p.Spec); err != nil {
		return nil, &PolicyError{Kind: "AuthorizationPolicy", Namespace: p.Namespace, Name: p.Name, Err: err}
	}
	return p, nil
}

// DecodePeerAuthentication is DecodeAuthorizationPolicy for
// PeerAuthentication.
func DecodePeerAuthentication(data []byte) (*securityv1.PeerAuthentication, error) {
	p := &securityv1.PeerAuthentication{}
	if err := decodeStrict(data, &p.TypeMeta, &p.ObjectMeta, &p.Spec); err != nil {
		return nil, &PolicyError{Kind: "PeerAuthentication", Namespace: p.Namespace, Name: p.Name, Err: err}
	}
	return p, nil
}

func decodeStrict(data []byte, tm *metav1.TypeMeta, om *metav1.ObjectMeta, spec proto.Message) error {
	var raw struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        metav1.ObjectMeta `json:"metadata"`
		Spec            json.RawMessage   `json:"spec"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return fmt.Errorf("decode object: %w", err)
	}
	*tm, *om = raw.TypeMeta, raw.Metadata
	if len(raw.Spec) == 0 || string(raw.Spec) == "null" {
		return nil
	}
	if err := protojson.Unmarshal(raw.Spec, spec); err != nil {
		return fmt.Errorf("decode spec: %w", err)
	}
	return nil
}
