module rrdns

go 1.19
