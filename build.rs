include!("build_rpath.rs");
