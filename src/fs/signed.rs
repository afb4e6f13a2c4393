//! Opens under publishers' signatures: which file a model's signature lets
//! an open read, verified how (see [`crate::signature`]).

use std::sync::Arc;

use super::generation::Generation;
use super::tree::{Layout, hf_sharers};
use super::{FsError, ModelFs};
use crate::fetch::Target;
use crate::manifest::Model;
use crate::signature::Verdict;

impl ModelFs {
    /// File `file` of model `model` as the signatures vouch for it, with
    /// the verdict it was served under. In the hub layout a blob is every
    /// model's of its repo with that sha256: each of them must let it be
    /// served, and one that signs the sha256 itself says how it is verified.
    pub(super) fn signed_file(
        &self,
        g: &Generation,
        model: usize,
        file: usize,
    ) -> Result<(Target, Option<Arc<Verdict>>), FsError> {
        let own = Target::of(&g.manifest, model, file);
        if self.signatures.is_none() || self.catalog.layout() != Layout::Hf {
            return self.signed(own);
        }
        let sharers = hf_sharers(&g.manifest, model, file);
        let mut served = Vec::with_capacity(sharers.len());
        for &(m, f) in &sharers {
            served.push(self.signed(Target::of(&g.manifest, m, f))?);
        }
        // Bytes must be bound alike for every model that signs them.
        let signed: Vec<&(Target, Option<Arc<Verdict>>)> = served
            .iter()
            .filter(|(_, v)| matches!(v.as_deref(), Some(Verdict::Verified { .. })))
            .collect();
        let Some(&first) = signed.first() else {
            // None is signed: the file as its own model serves it, judged above.
            let own = sharers.iter().position(|&s| s == (model, file));
            return Ok(served[own.expect("a file shares its own blob")].clone());
        };
        // Every one signs the sha256 the blob is named by: any one's way
        // of verifying it (the lazy one, if there is one) binds it for all.
        let signs_sha256 = |(t, v): &&(Target, Option<Arc<Verdict>>)| {
            v.as_deref().is_some_and(|v| v.signs_sha256(t.file_index()))
        };
        if signed.iter().all(signs_sha256) {
            let lazy = signed.iter().find(|(t, _)| t.entry().is_chunked());
            return Ok((*lazy.unwrap_or(&first)).clone());
        }
        if !signed
            .iter()
            .all(|(t, _)| t.entry().same_as(first.0.entry()))
        {
            return Err(FsError::Refused(format!(
                "{own}: the models sharing its blob are signed in different pieces"
            )));
        }
        Ok(first.clone())
    }

    /// `target` as its model's signature vouches for it (see
    /// [`crate::signature`]), with the verdict; its model's first open
    /// waits for the check. Refused models and unsigned files are errors.
    fn signed(&self, target: Target) -> Result<(Target, Option<Arc<Verdict>>), FsError> {
        let Some(signatures) = &self.signatures else {
            return Ok((target, None));
        };
        let verdict = match signatures.known(target.model()) {
            Some(verdict) => verdict,
            // Opens run on the blocking pool: waiting here holds no request.
            None => self.runtime.block_on(signatures.verdict(target.model()))?,
        };
        let file = target.file_index();
        let model = verdict
            .serves(target.model())
            .map_err(|why| FsError::Refused(format!("{}: {why}", target.model_id())))?;
        if verdict.leaves_out(file) {
            return Err(FsError::Refused(format!(
                "{target}: left out of the signature by its signer (ignore_paths)"
            )));
        }
        let target = Target::new(Arc::clone(model), file);
        Ok((target, Some(verdict)))
    }

    /// What a model's files say of its signature, without checking it.
    pub(super) fn signature_standing(&self, model: &Arc<Model>) -> String {
        match (&self.signatures, &model.signature) {
            (Some(signatures), _) => signatures.standing(model),
            (None, None) => "unsigned".into(),
            (None, Some(_)) => "signed, not checked: no --trusted-key".into(),
        }
    }
}
