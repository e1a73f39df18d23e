//! Rebuilds the service when a migration is added or changed: `sqlx::migrate!` embeds the files
//! of `migrations/` when it compiles, and the compiler watches only the files that existed then
//! (sqlx 0.8's `migrate!` documentation asks for this build script).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
