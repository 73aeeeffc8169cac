//go:build tools

// Package tools pins the Multus thin plugin.
package tools

import _ "gopkg.in/k8snetworkplumbingwg/multus-cni.v4/cmd/multus"
