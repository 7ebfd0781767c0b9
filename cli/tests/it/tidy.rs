//! Repository hygiene checked as a test (after rust-analyzer's tidy tests): every Rust file
//! opens with a `//!` line saying what it is for, and every migration is commented.

use std::path::{Path, PathBuf};

use crate::harness::workspace_root;

fn files_with_extension(dir: &Path, extension: &str, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            files_with_extension(&path, extension, found);
        } else if path.extension().is_some_and(|e| e == extension) {
            found.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let mut files = Vec::new();
    files_with_extension(&workspace_root(), "rs", &mut files);
    assert!(files.len() > 10, "found only {files:?}");
    let undocumented: Vec<_> = files
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).expect("readable source");
            !text.trim_start().starts_with("//!")
        })
        .collect();
    assert!(undocumented.is_empty(), "files without a leading `//!` doc line: {undocumented:?}");
}

#[test]
fn every_migration_says_what_it_is_for() {
    let mut files = Vec::new();
    files_with_extension(&workspace_root().join("migrations"), "sql", &mut files);
    assert!(!files.is_empty());
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable migration");
        assert!(text.starts_with("-- "), "{} must open with a comment", path.display());
    }
}
