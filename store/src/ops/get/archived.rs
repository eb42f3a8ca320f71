//! `get` of an archived image: rebuilt from its archive stream, blocks
//! deflated again in parallel (see [`crate::archive`]). Slower than a hot
//! get by the cost of zlib -9, and written out the same way: to a file only
//! once the whole image hashed right.

use std::sync::Arc;
use std::time::Instant;

use super::{GetReport, Output, Piece, Sink};
use crate::archive::Recipe;
use crate::error::Result;
use crate::progress::Progress;
use crate::Store;

impl Store {
    /// Writes the archived image of `recipe` to `out`.
    pub(super) fn get_archived(
        &self,
        recipe: Recipe,
        out: Output,
        progress: &dyn Progress,
        started: Instant,
        requests_before: Option<crate::backend::Requests>,
    ) -> Result<GetReport> {
        // The reader's lease keeps gc off the stream's chunks while it reads.
        let store = Arc::new(self.clone());
        let reader = store.reader()?;
        let mut sink = Sink::open(out)?;
        progress.start("get (rebuilding an archived image)", Some(recipe.image_size));
        let rebuilt = store.rebuild_image(&reader, &recipe, progress, &mut |piece| {
            sink.write(&Piece::Data(piece))
        });
        progress.finish();
        rebuilt?;
        sink.commit(recipe.image_size)?;
        Ok(GetReport {
            image: recipe.image,
            size: recipe.image_size,
            chunks: 0,
            archived: true,
            seconds: started.elapsed().as_secs_f64(),
            requests: self.requests_since(requests_before),
        })
    }
}
