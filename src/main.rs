//! The `liverestore` command. Everything is in the library: the command
//! line in `liverestore::cli`, the early-boot step (this same static
//! program started as `/lr/init`) in `liverestore::boot::early_boot`.

fn main() -> std::process::ExitCode {
    if liverestore::boot::early_boot::is_early_boot() {
        liverestore::boot::early_boot::run();
    }
    liverestore::cli::main()
}
