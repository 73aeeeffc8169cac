module spiderpool.lab/cert-manager

go 1.26.0
