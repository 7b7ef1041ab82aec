// Command otelcol-usage is the OpenTelemetry Collector distribution the usage pipeline is
// tested behind: the components deploy/otelcol/config.yaml needs, and nothing else, so it
// builds from a short lock file (go.mod and go.sum beside this file) in a few minutes.
//
// It is what the OpenTelemetry Collector Builder would write for the same component list,
// written by hand so that the module stays small and readable:
//
//   - receivers:  otlp (gRPC and HTTP), what the apps send to;
//   - processors: filter (OTTL conditions: the usage rule of the recommended configuration),
//     batch, memory_limiter;
//   - exporters:  otlp_grpc (gzip, retry_on_failure, sending_queue), debug;
//   - extensions: file_storage (the persistent sending queue), health_check (probes).
//
// Every collector module is at one release (core v0.161.0 / v1.67.0, contrib v0.161.0): the
// collector's modules are only tested together at one release, and mixing them fails to
// build or, worse, builds and misbehaves.
package main

import (
	"os"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/envprovider"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/confmap/provider/yamlprovider"
	"go.opentelemetry.io/collector/otelcol"
)

func main() {
	info := component.BuildInfo{
		Command:     "otelcol-usage",
		Description: "OpenTelemetry Collector with the components of the usage pipeline's recommended configuration",
		Version:     "0.161.0-usage",
	}
	settings := otelcol.CollectorSettings{
		BuildInfo: info,
		Factories: components,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				// file: for --config, env: for ${env:NAME} in it, yaml: for --set.
				ProviderFactories: []confmap.ProviderFactory{
					envprovider.NewFactory(),
					fileprovider.NewFactory(),
					yamlprovider.NewFactory(),
				},
				DefaultScheme: "env",
			},
		},
		ProviderModules: map[string]string{
			"env":  "go.opentelemetry.io/collector/confmap/provider/envprovider v1.67.0",
			"file": "go.opentelemetry.io/collector/confmap/provider/fileprovider v1.67.0",
			"yaml": "go.opentelemetry.io/collector/confmap/provider/yamlprovider v1.67.0",
		},
	}
	// The command prints its own error ("Error: ..."); the exit status says it failed.
	if err := otelcol.NewCommand(settings).Execute(); err != nil {
		os.Exit(1)
	}
}
