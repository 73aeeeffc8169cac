module spiderpool.lab/prometheus-operator

go 1.26.0
