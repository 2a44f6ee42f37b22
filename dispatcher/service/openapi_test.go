package service

import (
	"os"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestOpenAPI: docs/openapi.yaml documents exactly the routes the service
// registers, each with its path parameters, and the error reasons the
// service gives.
func TestOpenAPI(t *testing.T) {
	raw, err := os.ReadFile("../../docs/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OpenAPI string `yaml:"openapi"`
		Paths   map[string]map[string]struct {
			OperationID string           `yaml:"operationId"`
			Parameters  []map[string]any `yaml:"parameters"`
		} `yaml:"paths"`
		Components struct {
			Schemas struct {
				Error struct {
					Properties struct {
						Reason struct {
							Reasons []string `yaml:"x-service-reasons"`
						} `yaml:"reason"`
					} `yaml:"properties"`
				} `yaml:"Error"`
			} `yaml:"schemas"`
		} `yaml:"components"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi %q", doc.OpenAPI)
	}
	var documented, served []string
	for path, ops := range doc.Paths {
		for method, op := range ops {
			documented = append(documented, strings.ToUpper(method)+" "+path)
			if op.OperationID == "" {
				t.Errorf("%s %s has no operationId", method, path)
			}
			if strings.Contains(path, "{id}") && len(op.Parameters) == 0 {
				t.Errorf("%s %s does not document {id}", method, path)
			}
		}
	}
	for _, rt := range routes {
		served = append(served, rt.method+" "+rt.path)
	}
	slices.Sort(documented)
	slices.Sort(served)
	if !slices.Equal(documented, served) {
		t.Errorf("docs/openapi.yaml and the routes differ:\ndocumented %q\nserved     %q", documented, served)
	}
	reasons := doc.Components.Schemas.Error.Properties.Reason.Reasons
	for _, r := range []string{ReasonLeased, ReasonForbidden, ReasonLeaseEnded, ReasonUnsatisfiable, ReasonBusy,
		ReasonState, ReasonOffline, ReasonUnsupported, ReasonInternal, "invalid_params", "not_found", "unauthorized", "too_large"} {
		if !slices.Contains(reasons, r) {
			t.Errorf("error reason %q is not documented", r)
		}
	}
}
