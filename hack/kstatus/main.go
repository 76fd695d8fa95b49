// Command kstatus prints what the real kstatus library computes for Kubernetes objects: status.Compute of
// sigs.k8s.io/cli-utils pkg/kstatus/status, the rules Flux's `wait: true`, kpt and cli-utils' applier read a
// resource's health with. Stdin holds JSON values one after another, each an object, an array of objects or a list
// (`kubectl get -o json`); objects are decoded as client-go decodes them (UnstructuredJSONScheme: integers stay
// int64, which status.Compute needs for generation and observedGeneration). One JSON line per object, in order:
// {"name", "status", "message", "error"}.
//
//	kubectl get ftj -n team-a -o json | go run .
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error,omitempty"`
}

// objects decodes one JSON value into the objects it holds.
func objects(raw json.RawMessage) ([]*unstructured.Unstructured, error) {
	if trimmed := bytes.TrimSpace(raw); len(trimmed) > 0 && trimmed[0] == '[' {
		var values []json.RawMessage
		if err := json.Unmarshal(raw, &values); err != nil {
			return nil, err
		}
		var out []*unstructured.Unstructured
		for _, value := range values {
			more, err := objects(value)
			if err != nil {
				return nil, err
			}
			out = append(out, more...)
		}
		return out, nil
	}
	var probe struct {
		Items json.RawMessage `json:"items"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return nil, err
	}
	if probe.Items != nil {
		list := &unstructured.UnstructuredList{}
		if err := list.UnmarshalJSON(raw); err != nil {
			return nil, err
		}
		out := make([]*unstructured.Unstructured, len(list.Items))
		for i := range list.Items {
			out[i] = &list.Items[i]
		}
		return out, nil
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(raw); err != nil {
		return nil, err
	}
	return []*unstructured.Unstructured{u}, nil
}

func compute(u *unstructured.Unstructured) result {
	out := result{Name: u.GetName()}
	res, err := status.Compute(u)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	out.Status, out.Message = res.Status.String(), res.Message
	return out
}

func main() {
	decoder := json.NewDecoder(bufio.NewReader(os.Stdin))
	writer := bufio.NewWriter(os.Stdout)
	defer writer.Flush()
	encoder := json.NewEncoder(writer)
	for {
		var raw json.RawMessage
		if err := decoder.Decode(&raw); errors.Is(err, io.EOF) {
			return
		} else if err != nil {
			fail(err)
		}
		objs, err := objects(raw)
		if err != nil {
			fail(err)
		}
		for _, u := range objs {
			if err := encoder.Encode(compute(u)); err != nil {
				fail(err)
			}
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
