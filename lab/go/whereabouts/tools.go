//go:build tools

// Package tools pins Whereabouts, the peer cluster-wide IPAM the benchmarks compare with: its IPAM
// plugin and the ip-control-loop its DaemonSet runs (what upstream's image holds).
package tools

import (
	_ "github.com/k8snetworkplumbingwg/whereabouts/cmd"
	_ "github.com/k8snetworkplumbingwg/whereabouts/cmd/controlloop"
)
