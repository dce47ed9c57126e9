fn main() {
    println!("cargo:rerun-if-changed=control.proto");
    if std::env::var_os("CARGO_FEATURE_GRPC").is_none() {
        return;
    }
    tonic_prost_build::configure()
        .compile_protos(&["control.proto"], &["."])
        .unwrap_or_else(|e| {
            panic!("generating the gRPC code from control.proto failed ({e}); install protoc (Debian: apt-get install protobuf-compiler) or set PROTOC")
        });
}
