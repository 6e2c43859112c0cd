# syntax=docker/dockerfile:1
# The image a NautilusMaster's spec.enclave.image names: it only carries the EIF, at the path
# spec.enclave.eifPath defaults to. Build it next to nautilus.eif (see enclave.Dockerfile):
#   docker build -f images/eif.Dockerfile -t registry.example.com/nautilus/enclave:0.1.0 .
# and put its digest in spec.enclave.image.
FROM scratch
COPY nautilus.eif /nautilus/enclave.eif
