//! A model named by its Hugging Face Hub id (`sentence-transformers/all-MiniLM-L6-v2`)
//! where a path is expected: shears reads folders on disk and downloads nothing, so the
//! error says how to get the folder rather than only that the path does not exist.

use std::path::{Component, Path};

use anyhow::{Result, bail};

/// An error if `model` does not exist and reads as a Hub id: two plain names joined by
/// one `/`, the first of them not a folder here either, the last not a file's name.
pub(crate) fn check_not_hub_id(model: &Path) -> Result<()> {
    if let Some(id) = hub_id(model) {
        let name = id.rsplit('/').next().unwrap_or(id);
        bail!(
            "{id} does not exist here: shears reads model folders on disk, not from the Hugging Face Hub (download it first: `huggingface-cli download {id} --local-dir {name}`, then give {name})"
        );
    }
    Ok(())
}

/// `model` as a Hub id, if it reads as one and names nothing on disk.
fn hub_id(model: &Path) -> Option<&str> {
    let text = model.to_str()?;
    let parts: Vec<Component> = model.components().collect();
    let [Component::Normal(owner), Component::Normal(name)] = parts[..] else { return None };
    let (owner, name) = (owner.to_str()?, name.to_str()?);
    // The Hub's own rule for repository names: letters, digits, `-`, `_` and `.`.
    let valid = |part: &str| {
        !part.starts_with(['.', '-'])
            && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let file_like = [".safetensors", ".json", ".bin", ".pt", ".onnx"];
    let absent = |p: &Path| std::fs::symlink_metadata(p).is_err();
    (text == format!("{owner}/{name}")
        && valid(owner)
        && valid(name)
        && !file_like.iter().any(|ext| name.ends_with(ext))
        && absent(model)
        && absent(Path::new(owner)))
    .then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_told_from_paths() {
        let hint = check_not_hub_id(Path::new("sentence-transformers/all-MiniLM-L6-v2"));
        let hint = hint.unwrap_err().to_string();
        assert!(hint.starts_with("sentence-transformers/all-MiniLM-L6-v2 does not exist here: shears reads model folders on disk"), "{hint}");
        assert!(
            hint.contains("--local-dir all-MiniLM-L6-v2`, then give all-MiniLM-L6-v2)"),
            "{hint}"
        );
        // Paths that are not ids, or that exist: left to the command's own errors.
        for path in [
            "model",
            "./org/model",
            "/org/model",
            "org/model/",
            "a/b/c",
            "org/model.safetensors",
            "org/index.json",
            "org/.hidden",
            "src/nothing",
            "org/with space",
        ] {
            check_not_hub_id(Path::new(path)).unwrap();
        }
    }
}
