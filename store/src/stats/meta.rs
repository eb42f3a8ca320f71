//! What the report view keeps per image for `find`.

use std::collections::BTreeMap;

/// What the view keeps of an image's own metadata (lifted from a SIF at
/// put): its definition file and labels. A ref's `--deffile` and
/// `--label`s live in the ref and are read with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageMeta {
    /// The SIF's own definition file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deffile: Option<String>,
    /// The SIF's labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl ImageMeta {
    /// The metadata of a manifest.
    pub fn of(m: &crate::manifest::Manifest) -> ImageMeta {
        m.meta
            .sif
            .as_ref()
            .map_or_else(ImageMeta::default, |s| ImageMeta {
                deffile: s.deffile.clone(),
                labels: s.labels.clone(),
            })
    }
}

impl ImageMeta {
    pub(super) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("image metadata serializes")
    }

    pub(super) fn decode(b: &[u8]) -> Option<ImageMeta> {
        serde_json::from_slice(b).ok()
    }
}
