"""Node networking (netlink) for the CNI plugins, run by the agent."""
