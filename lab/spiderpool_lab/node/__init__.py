"""The lab's kubelet and container-runtime stand-in (one process per lab node)."""
