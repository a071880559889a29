package server

import "go.opentelemetry.io/otel/attribute"

func attrType(t string) attribute.KeyValue { return attribute.String("type", t) }
