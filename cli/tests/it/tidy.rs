//! Repository hygiene and the invariants ARCHITECTURE.md states, checked as tests (after
//! rust-analyzer's tidy): every Rust file opens with a `//!` line and every migration with a
//! comment; each crate links only what the invariants allow; environment reads and exits only
//! where the binaries' configuration lives; no `#[ignore]`; and every path and workspace item
//! the docs and migration comments name exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::harness::workspace_root;

/// Every file under `dir` (not `target/`, not hidden) whose name ends with `suffix`.
fn files_ending(dir: &Path, suffix: &str, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            files_ending(&path, suffix, found);
        } else if name.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace_root()).unwrap_or(path).display().to_string()
}

/// The workspace's crates and, for each, its direct normal dependencies and every crate its
/// normal dependencies pull in (dev and build dependencies left out: they are not linked into
/// the crate).
struct Graph {
    members: BTreeSet<String>,
    direct: BTreeMap<String, BTreeSet<String>>,
    closure: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    fn load() -> Self {
        // The host's dependencies only: other platforms' crates are not downloaded, and the
        // check must not need the network.
        let rustc = Command::new("rustc").arg("-vV").output().expect("run rustc -vV");
        let host = String::from_utf8_lossy(&rustc.stdout)
            .lines()
            .find_map(|line| line.strip_prefix("host: ").map(str::to_owned))
            .expect("rustc -vV names the host");
        let output = Command::new(env!("CARGO"))
            .args(["metadata", "--format-version", "1", "--offline", "--locked", "--filter-platform", &host])
            .current_dir(workspace_root())
            .output()
            .expect("run cargo metadata");
        assert!(output.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
        let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
        let name_of: BTreeMap<&str, &str> = metadata["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|p| (p["id"].as_str().expect("id"), p["name"].as_str().expect("name")))
            .collect();
        let members: BTreeSet<String> = metadata["workspace_members"]
            .as_array()
            .expect("workspace members")
            .iter()
            .map(|id| name_of[id.as_str().expect("id")].to_owned())
            .collect();
        let mut normal: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for node in metadata["resolve"]["nodes"].as_array().expect("resolve nodes") {
            let from = name_of[node["id"].as_str().expect("id")].to_owned();
            let deps = node["deps"].as_array().expect("deps").iter().filter(|dep| {
                dep["dep_kinds"].as_array().expect("dep kinds").iter().any(|kind| kind["kind"].is_null())
            });
            normal
                .entry(from)
                .or_default()
                .extend(deps.map(|dep| name_of[dep["pkg"].as_str().expect("pkg")].to_owned()));
        }
        let closure = members
            .iter()
            .map(|member| {
                let mut seen = BTreeSet::new();
                let mut todo = vec![member.clone()];
                while let Some(next) = todo.pop() {
                    for dep in normal.get(&next).into_iter().flatten() {
                        if seen.insert(dep.clone()) {
                            todo.push(dep.clone());
                        }
                    }
                }
                (member.clone(), seen)
            })
            .collect();
        let direct = members.iter().map(|m| (m.clone(), normal.get(m).cloned().unwrap_or_default())).collect();
        Self { members, direct, closure }
    }

    /// The members whose linked dependencies include `package`.
    fn linking(&self, package: &str) -> BTreeSet<&str> {
        self.closure.iter().filter(|(_, deps)| deps.contains(package)).map(|(m, _)| m.as_str()).collect()
    }

    /// The members that name `package` as a direct normal dependency.
    fn depending(&self, package: &str) -> BTreeSet<&str> {
        self.direct.iter().filter(|(_, deps)| deps.contains(package)).map(|(m, _)| m.as_str()).collect()
    }
}

#[test]
fn each_crate_links_only_what_the_invariants_allow() {
    let graph = Graph::load();
    let set = |names: &[&'static str]| names.iter().copied().collect::<BTreeSet<&str>>();
    assert!(graph.members.len() >= 8, "{:?}", graph.members);

    // "Only `compiler` links Z3": the rest reach it through `compiler`, and the router and the
    // decision-module runtime never do.
    assert_eq!(graph.depending("z3"), set(&["compiler"]), "only compiler names z3");
    for member in ["router", "runtime", "pipeline"] {
        assert!(!graph.linking("z3").contains(member), "{member} must not link z3");
    }
    // "`runtime` knows nothing of Postgres or PGMQ; `compiler` does no network or database I/O."
    for package in ["sqlx", "pgmq", "reqwest", "tokio"] {
        for member in ["abi", "runtime", "compiler"] {
            assert!(!graph.linking(package).contains(member), "{member} must not link {package}");
        }
    }
    // "`compiler` does not link wasmtime (nor does `api`)": the ABI types are in `abi`.
    for member in ["abi", "compiler", "api"] {
        assert!(!graph.linking("wasmtime").contains(member), "{member} must not link wasmtime");
    }
    // `anyhow` only in the binaries.
    assert_eq!(graph.depending("anyhow"), set(&["cli"]), "anyhow is for binaries only");
    // No crate depends back up on the binaries' crate, and `pipeline`, the shared plumbing,
    // on no other workspace crate.
    assert!(graph.linking("cli").is_empty(), "{:?} depend on cli", graph.linking("cli"));
    let ours: BTreeSet<&str> =
        graph.direct["pipeline"].iter().map(String::as_str).filter(|dep| graph.members.contains(*dep)).collect();
    assert!(ours.is_empty(), "pipeline depends on {ours:?}");
}

/// Non-test Rust sources of the crates: `*/src/**.rs`, without their `#[cfg(test)]` modules.
fn library_and_binary_sources() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(workspace_root()).expect("workspace root").flatten() {
        let src = entry.path().join("src");
        if entry.path().join("Cargo.toml").is_file() && src.is_dir() {
            files_ending(&src, ".rs", &mut files);
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = read(&path);
            let code = text.split("#[cfg(test)]").next().unwrap_or_default().to_owned();
            (path, code)
        })
        .collect()
}

#[test]
fn only_the_binaries_config_reads_the_environment_and_only_binaries_exit() {
    let sources = library_and_binary_sources();
    assert!(sources.len() > 20, "found only {} source files", sources.len());
    let mut offences = Vec::new();
    for (path, code) in &sources {
        let name = relative(path);
        for (number, line) in code.lines().enumerate() {
            let reads_env =
                ["env::var(", "env::var_os(", "env::vars(", "env::vars_os("].iter().any(|c| line.contains(c));
            if reads_env && name != "cli/src/config.rs" {
                offences.push(format!("{name}:{}: reads the environment: {}", number + 1, line.trim()));
            }
            if line.contains("process::exit(") && !name.starts_with("cli/src/") {
                offences.push(format!("{name}:{}: a library exits: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(offences.is_empty(), "{}", offences.join("\n"));
}

#[test]
fn no_test_is_ignored() {
    let mut files = Vec::new();
    files_ending(&workspace_root(), ".rs", &mut files);
    let ignored: Vec<String> = files
        .iter()
        .filter(|path| read(path).lines().any(|line| line.trim_start().starts_with("#[ignore")))
        .map(|path| relative(path))
        .collect();
    assert!(ignored.is_empty(), "ignored tests in {ignored:?}: a test runs or is deleted");
}

/// The text between backticks in `text`, each with its line number.
fn quoted(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let mut parts = line.split('`');
        parts.next();
        while let (Some(inside), Some(_)) = (parts.next(), parts.next()) {
            out.push((number + 1, inside.to_owned()));
        }
        // An unclosed quote (a code block fence, or a quote wrapped onto the next line) is skipped.
    }
    out
}

/// Whether `token` reads as a file path in the repository: a relative path with a `/` and a
/// file name or a trailing `/`, nothing to fill in and no URL.
fn is_repo_path(token: &str) -> bool {
    let plain = token.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
    let named = token.ends_with('/') || Path::new(token).extension().is_some();
    plain && named && token.contains('/') && !token.starts_with('/') && !token.contains("//")
}

/// The docs whose quoted paths and items must exist: ARCHITECTURE.md, every README.md, and
/// the migrations' comments.
fn documents() -> Vec<(PathBuf, String)> {
    let root = workspace_root();
    let mut readmes = Vec::new();
    files_ending(&root, "README.md", &mut readmes);
    let mut docs: Vec<(PathBuf, String)> = std::iter::once(root.join("ARCHITECTURE.md"))
        .chain(readmes)
        .map(|path| {
            let text = read(&path);
            (path, text)
        })
        .collect();
    let mut migrations = Vec::new();
    files_ending(&root.join("migrations"), ".sql", &mut migrations);
    for path in migrations {
        let comments: Vec<String> = read(&path)
            .lines()
            .map(|line| line.split_once("-- ").map_or(String::new(), |(_, comment)| comment.to_owned()))
            .collect();
        docs.push((path, comments.join("\n")));
    }
    docs
}

/// Where the items of the workspace are defined: every `fn`, `struct`, `enum`, `trait`,
/// `type`, `const`, `static`, `mod` and macro name, per crate source file.
struct Items {
    root: PathBuf,
    /// Every identifier anywhere in the workspace's sources (item, variant and field names).
    defined: BTreeSet<String>,
    /// Every `(keyword, name)` declaration pair: `("struct", "Pgmq")`, `("fn", "detect")`.
    declarations: BTreeSet<(String, String)>,
    /// Each source file's identifiers.
    files: Vec<BTreeSet<String>>,
}

impl Items {
    fn load() -> Self {
        let root = workspace_root();
        let mut files = Vec::new();
        files_ending(&root, ".rs", &mut files);
        let (mut defined, mut declarations) = (BTreeSet::new(), BTreeSet::new());
        let mut per_file = Vec::new();
        for path in files {
            let text = read(&path);
            let words: Vec<&str> =
                text.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).collect();
            for pair in words.windows(2) {
                declarations.insert((pair[0].to_owned(), pair[1].to_owned()));
            }
            let words: BTreeSet<String> = words.into_iter().map(str::to_owned).collect();
            defined.extend(words.iter().cloned());
            per_file.push(words);
        }
        Self { root, defined, declarations, files: per_file }
    }

    /// The module file of `crate_name::a::b` (as far as modules go) and the rest of the path.
    fn module<'p>(&self, segments: &'p [&'p str]) -> Option<(PathBuf, &'p [&'p str])> {
        let mut dir = self.root.join(segments[0]).join("src");
        let mut file = dir.join("lib.rs");
        if !file.is_file() {
            file = dir.join("main.rs");
        }
        file.is_file().then_some(())?;
        let mut rest = &segments[1..];
        while let Some((first, tail)) = rest.split_first() {
            let (as_file, as_dir) = (dir.join(format!("{first}.rs")), dir.join(first).join("mod.rs"));
            if as_file.is_file() {
                file = as_file;
            } else if as_dir.is_file() {
                file = as_dir;
            } else {
                break;
            }
            dir = dir.join(first);
            rest = tail;
        }
        Some((file, rest))
    }

    /// Whether a file's identifiers include a type declaration of `name` (approximately: the
    /// keyword and the name both occur; the workspace-wide pairs confirm it is a declaration).
    fn declares_type_in(&self, words: &BTreeSet<String>, name: &str) -> bool {
        words.contains(name) && self.declares_type(name) && {
            ["struct", "enum", "trait", "type"].iter().any(|kind| words.contains(*kind))
        }
    }

    /// Whether the workspace declares a `struct`, `enum`, `trait` or `type` named `name`.
    fn declares_type(&self, name: &str) -> bool {
        ["struct", "enum", "trait", "type"]
            .iter()
            .any(|kind| self.declarations.contains(&((*kind).to_owned(), name.to_owned())))
    }

    /// Checks a quoted path: `crate::module::Item` from its crate, `module::item` from any
    /// crate that has such a module, `Type::member` where the workspace defines `Type`.
    /// `None` when the path is not the workspace's (an external crate's, or not a path).
    fn check(&self, crates: &BTreeSet<String>, segments: &[&str]) -> Option<Result<(), String>> {
        if crates.contains(segments[0]) {
            return Some(self.unresolved(segments).map_or(Ok(()), Err));
        }
        if segments[0].starts_with(char::is_uppercase) {
            if !self.declares_type(segments[0]) {
                return None;
            }
            // A member (method, constant, variant) is named in a file that declares the type,
            // or declared as a function somewhere (an `impl` elsewhere).
            let homes: Vec<&BTreeSet<String>> =
                self.files.iter().filter(|words| self.declares_type_in(words, segments[0])).collect();
            let known = |m: &str| {
                homes.iter().any(|words| words.contains(m))
                    || self.declarations.contains(&("fn".to_owned(), m.to_owned()))
            };
            let member = segments[1..].iter().find(|m| !known(m));
            return Some(member.map_or(Ok(()), |m| Err(format!("`{}` has no `{m}`", segments[0]))));
        }
        let mut owners = crates.iter().filter(|c| {
            let src = self.root.join(c).join("src");
            src.join(format!("{}.rs", segments[0])).is_file() || src.join(segments[0]).join("mod.rs").is_file()
        });
        let first = owners.next()?;
        let mut problems = Vec::new();
        for owner in std::iter::once(first).chain(owners) {
            let mut full = vec![owner.as_str()];
            full.extend_from_slice(segments);
            match self.unresolved(&full) {
                None => return Some(Ok(())),
                Some(problem) => problems.push(format!("in {owner}: {problem}")),
            }
        }
        Some(Err(problems.join("; ")))
    }

    /// Why `path` (`crate::module::Item::member`) does not resolve, if it does not: its
    /// modules are files of the crate, its item is defined (or re-exported) in the last of
    /// them, and any member after it is defined in the workspace.
    fn unresolved(&self, segments: &[&str]) -> Option<String> {
        let Some((file, rest)) = self.module(segments) else {
            return Some(format!("no crate `{}`", segments[0]));
        };
        let (item, members) = rest.split_first()?;
        let text = read(&file);
        let words = |line: &str| -> Vec<String> {
            line.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let keywords = ["fn", "struct", "enum", "trait", "type", "const", "static", "mod", "macro_rules"];
        let declared = words(&text).windows(2).any(|w| w[1] == *item && keywords.contains(&w[0].as_str()));
        // or re-exported: `pub use error::{Error, Result};`
        let reexported = text
            .lines()
            .filter(|line| line.trim_start().starts_with("pub use"))
            .any(|line| words(line).iter().any(|word| word == item));
        if !(declared || reexported) {
            return Some(format!("`{item}` is not defined in {}", relative(&file)));
        }
        members.iter().find(|m| !self.defined.contains(**m)).map(|m| format!("`{m}` is defined nowhere"))
    }
}

/// Paths the docs quote from other codebases (CONVENTIONS.md's models).
const EXTERNAL_PATHS: [&str; 1] = ["symcc/solver.rs"];
/// Types the docs quote from dependencies (wasmtime's).
const EXTERNAL_TYPES: [&str; 2] = ["InstancePre", "Store"];

#[test]
fn every_path_and_item_the_docs_name_exists() {
    let root = workspace_root();
    let items = Items::load();
    let crates: BTreeSet<String> = std::fs::read_dir(&root)
        .expect("workspace root")
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut checked = (0, 0);
    let mut missing = Vec::new();
    for (doc, text) in documents() {
        let base = doc.parent().expect("a document is in a folder").to_path_buf();
        for (line, token) in quoted(&text) {
            let token = token.trim_end_matches(['.', ',', ':']);
            // Generated files (`.local/`) and other codebases' paths are not ours to check.
            if token.starts_with(".local/") || EXTERNAL_PATHS.contains(&token) {
                continue;
            }
            if is_repo_path(token) {
                checked.0 += 1;
                // Code-map paths are relative to their crate's paragraph: any crate's folder will do.
                let exists = root.join(token).exists()
                    || base.join(token).exists()
                    || crates.iter().any(|c| root.join(c).join(token).exists());
                if !exists {
                    missing.push(format!("{}:{line}: no file `{token}`", relative(&doc)));
                }
                continue;
            }
            // `crate::module::Item`, `module::item` (of some crate), `Type::member`.
            let path = token.split(['(', '<', ' ']).next().unwrap_or_default();
            let segments: Vec<&str> = path.split("::").collect();
            let identifiers =
                segments.iter().all(|s| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_'));
            if !identifiers {
                continue;
            }
            // A type quoted alone (`DeliveryState`): ours, unless a dependency's.
            if let [name] = segments[..] {
                let camel = name.starts_with(char::is_uppercase) && name.contains(char::is_lowercase);
                if camel && !EXTERNAL_TYPES.contains(&name) {
                    checked.1 += 1;
                    if !items.defined.contains(name) {
                        missing.push(format!("{}:{line}: no type `{name}` in the workspace", relative(&doc)));
                    }
                }
                continue;
            }
            if let Some(problem) = items.check(&crates, &segments) {
                checked.1 += 1;
                if let Err(problem) = problem {
                    missing.push(format!("{}:{line}: `{token}`: {problem}", relative(&doc)));
                }
            }
        }
    }
    assert!(checked.0 > 30 && checked.1 > 30, "checked only {checked:?} (paths, items): is the parser broken?");
    assert!(missing.is_empty(), "the docs name what does not exist:\n{}", missing.join("\n"));
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let mut files = Vec::new();
    files_ending(&workspace_root(), ".rs", &mut files);
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
    files_ending(&workspace_root().join("migrations"), ".sql", &mut files);
    assert!(!files.is_empty());
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable migration");
        assert!(text.starts_with("-- "), "{} must open with a comment", path.display());
    }
}
