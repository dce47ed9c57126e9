//! AF_XDP packet I/O (filled in).
