// Shared by the build scripts of the crates that link libtorch: embeds the
// libtorch directory as an rpath so binaries and test executables run without
// LD_LIBRARY_PATH. torch-sys publishes the directory as `DEP_TCH_LIBTORCH_LIB`
// to crates that depend on it directly.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
