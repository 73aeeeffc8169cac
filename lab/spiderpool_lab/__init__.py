"""The lab: a real Kubernetes control plane and network-namespace nodes on one machine.

Front door: the ``spiderpool-lab`` command (``spiderpool_lab.cli``).
"""
