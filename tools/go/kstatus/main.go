// kstatus computes an object's status the way Flux (`wait`, `healthChecks`) and
// `kubectl`-based tools built on sigs.k8s.io/cli-utils do, with that library itself:
//
//	kstatus < object.json
//
// prints {"status": "Current|InProgress|Failed|Terminating|...", "message": "..."} as one
// JSON line. It exits 1 when the input is not a JSON object or the library fails.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) != 1 {
		return fmt.Errorf("usage: kstatus < object.json")
	}
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		return err
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(in); err != nil {
		return fmt.Errorf("reading the object from stdin: %w", err)
	}
	res, err := status.Compute(u)
	if err != nil {
		return err
	}
	out, err := json.Marshal(map[string]string{
		"status":  res.Status.String(),
		"message": res.Message,
	})
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}
