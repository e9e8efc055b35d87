"""The gRPC services: one module per service, each only translating requests into
use-case calls; field checks, the error mapper and the interceptor they share."""
