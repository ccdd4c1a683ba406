//! Keeps the layers honest. The crate map in `src/lib.rs` says the layers only call downward
//! (server → cmd → locks → redlock → backend, with the foundations under all of them); this
//! reads every file under `src/` and fails when a module names a module above its own, when a
//! module is in no layer, or when a file is missing from the map. Test code (`#[cfg(test)]`
//! items and files) may reach anywhere: tests build what they test from any layer.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Each module's layer: a file may name only modules in its own layer or below. The most
/// specific entry that matches a module path applies.
const LAYERS: &[(&str, u8)] = &[
    // Foundations: they name nothing above them. `redlock::quorum` is pure arithmetic that
    // imports nothing; the configuration checks TTLs with it.
    ("protocol", 0),
    ("stats", 0),
    ("metrics", 0),
    ("config", 0),
    ("redlock::quorum", 0),
    ("backend", 1),
    ("redlock", 2),
    ("locks", 3),
    ("cmd", 4),
    ("error", 4),
    ("server", 5),
    // Used by `main.rs` (and tests) only.
    ("cli", 6),
    ("logging", 6),
    ("embedded", 6),
];

/// The layer of module path `path` (`a::b::c`), by its most specific entry.
fn layer(path: &str) -> Option<u8> {
    LAYERS
        .iter()
        .filter(|(prefix, _)| path == *prefix || path.starts_with(&format!("{prefix}::")))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|&(_, layer)| layer)
}

/// One file's module path, from its place under `src/` (`locks/keys.rs` → `locks::keys`).
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// Every `crate::…` path a file names outside test code, and the files it declares test-only
/// (`#[cfg(test)] mod tests;`).
#[derive(Default)]
struct Names {
    crate_paths: BTreeSet<String>,
    test_modules: Vec<String>,
}

impl<'ast> Visit<'ast> for Names {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if is_test_only(&m.attrs) {
            if m.content.is_none() {
                self.test_modules.push(m.ident.to_string());
            }
            return;
        }
        syn::visit::visit_item_mod(self, m);
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_test_only(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }

    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        if !is_test_only(&i.attrs) {
            syn::visit::visit_item_impl(self, i);
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        if is_test_only(&u.attrs) {
            return;
        }
        if let syn::UseTree::Path(p) = &u.tree
            && p.ident == "crate"
        {
            let mut prefixes = Vec::new();
            use_paths(&p.tree, String::new(), &mut prefixes);
            self.crate_paths.extend(prefixes);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if segments.first().is_some_and(|s| s == "crate") {
            self.crate_paths.insert(segments[1..].join("::"));
        }
        syn::visit::visit_path(self, p);
    }
}

/// The module paths a `use crate::{…}` tree names.
fn use_paths(tree: &syn::UseTree, prefix: String, out: &mut Vec<String>) {
    let join = |name: &str| {
        if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}::{name}")
        }
    };
    match tree {
        syn::UseTree::Path(p) => use_paths(&p.tree, join(&p.ident.to_string()), out),
        syn::UseTree::Name(n) if n.ident == "self" => out.push(prefix),
        syn::UseTree::Name(n) => out.push(join(&n.ident.to_string())),
        syn::UseTree::Rename(r) => out.push(join(&r.ident.to_string())),
        syn::UseTree::Glob(_) => out.push(prefix),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_paths(t, prefix.clone(), out);
            }
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The library's files (not the binaries'), with their parsed contents.
fn library() -> Vec<(PathBuf, syn::File)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|f| f.strip_prefix(&src).expect("under src/").to_path_buf())
        .filter(|rel| !rel.starts_with("bin") && rel != Path::new("main.rs"))
        .map(|rel| {
            let text = std::fs::read_to_string(src.join(&rel)).expect("read a source file");
            let parsed = syn::parse_file(&text)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", rel.display()));
            (rel, parsed)
        })
        .collect()
}

#[test]
fn layers_only_call_downward() {
    let files = library();
    let mut test_only: BTreeSet<String> = BTreeSet::new();
    let mut found: Vec<(String, Names)> = Vec::new();
    for (rel, parsed) in &files {
        let mut names = Names::default();
        names.visit_file(parsed);
        let module = module_of(rel);
        for m in &names.test_modules {
            test_only.insert(if module.is_empty() {
                m.clone()
            } else {
                format!("{module}::{m}")
            });
        }
        found.push((module, names));
    }
    let mut wrong = Vec::new();
    for (module, names) in &found {
        if module.is_empty() || test_only.contains(module) {
            continue; // lib.rs declares the modules; test files may use anything.
        }
        let Some(own) = layer(module) else {
            wrong.push(format!("{module} is in no layer: add it to LAYERS"));
            continue;
        };
        for path in &names.crate_paths {
            match layer(path) {
                Some(target) if target <= own => {}
                Some(target) => wrong.push(format!(
                    "{module} (layer {own}) names crate::{path} (layer {target})"
                )),
                None => wrong.push(format!("{module} names crate::{path}, in no layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "layer rule broken:\n{}", wrong.join("\n"));
}

/// True for a command's own file: the command table names it, not the map.
fn is_command(file: &syn::File) -> bool {
    file.items.iter().any(|item| {
        matches!(item, syn::Item::Const(c)
            if matches!(&*c.ty, syn::Type::Path(t) if t.path.is_ident("Spec")))
    })
}

#[test]
fn the_crate_map_names_every_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = std::fs::read_to_string(root.join("src/lib.rs")).expect("read lib.rs");
    let missing: Vec<String> = library()
        .into_iter()
        .filter(|(_, parsed)| !is_command(parsed))
        .map(|(rel, _)| rel)
        .filter(|rel| {
            rel.file_name()
                .is_some_and(|n| n != "mod.rs" && n != "lib.rs")
        })
        .filter(|rel| {
            let name = rel
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned();
            !map.contains(&name)
        })
        .map(|rel| rel.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "src/lib.rs's map does not name: {missing:?}"
    );
}
