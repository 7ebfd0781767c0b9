//! Rebuilds `pipeline` when a migration is added: `sqlx::migrate!` embeds the files it finds
//! at build time, and Cargo only watches the files it already embedded.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
