// Command kstatus-check reads one Kubernetes object as JSON on stdin and prints what
// kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status), the library Flux judges health
// with, says about it: {"status": "...", "message": "..."}. The tests run it against
// objects the operator really wrote, so the statuses are checked by Flux's own rules.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading stdin: %v", err)
	}
	// Unstructured's own decoder keeps integers as int64, as kstatus expects of
	// metadata.generation and status.observedGeneration.
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(data); err != nil {
		fail("stdin is not a Kubernetes object in JSON: %v", err)
	}
	res, err := status.Compute(obj)
	if err != nil {
		fail("kstatus: %v", err)
	}
	out, err := json.Marshal(result{Status: res.Status.String(), Message: res.Message})
	if err != nil {
		fail("encoding the result: %v", err)
	}
	fmt.Println(string(out))
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "kstatus-check: "+format+"\n", args...)
	os.Exit(2)
}
