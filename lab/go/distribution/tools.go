//go:build tools

// Package tools pins the CNCF distribution registry: the lab's image registry, which the nodes'
// containerd pulls the project's image from (make image-push pushes it there).
package tools

import (
	_ "github.com/distribution/distribution/v3/cmd/registry"
)
