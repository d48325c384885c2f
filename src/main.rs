//! The r2 executable: all of it is the library's [`r2::main`]. It is a
//! package of its own, beside the library's (src/Cargo.toml), so that it
//! has an opt-level of its own: see Cargo.toml.

fn main() -> std::process::ExitCode {
    r2::main()
}
