module goctxtwin

go 1.25
