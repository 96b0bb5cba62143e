//! Links the `skiff` binary as a position-dependent executable (`-no-pie`).
//!
//! Every instance runs a `skiff __shim` process: the same binary re-executed. A
//! position-independent executable is loaded at a random address, so the dynamic loader
//! rewrites every pointer in its `.data.rel.ro` (about 2 MiB and 94 000 relocations: vtables,
//! string tables, static descriptors) in each process, and those pages become private to the
//! process: 2.1 MiB of the shim's 2.4 MiB of private memory. Linked at a fixed address, those
//! pointers are final in the file, so the pages stay clean and shared by the server and every
//! shim (BENCHMARKS.md, "Density"). The cost: the binary's own code and data are not
//! randomized by ASLR (its heap, stacks and shared libraries still are).
//!
//! The objects are still compiled position-independent (the default relocation model), so
//! this changes only the final link and no dependency is rebuilt; gcc takes the last of
//! `-pie`/`-no-pie`, and cargo passes these arguments after rustc's own.

fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rerun-if-changed=build.rs");
}
