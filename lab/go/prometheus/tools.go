//go:build tools

// Package tools pins promtool, Prometheus' rule checker: the chart's PrometheusRule must pass
// `promtool check rules`.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
