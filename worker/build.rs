//! Embed libtorch's directory as an rpath so tests and binaries run without
//! LD_LIBRARY_PATH. torch-sys (links = "tch") hands us the directory it linked.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
