"""The infill layer: fill-in-the-middle on real files and on an editor's prefix and suffix.

- `source`: the file's bytes and the cursor (bytes in, bytes out; diffs);
- `formats`: StarCoder2's FIM and repository prompt formats, as token ids;
- `prompt`: the token budget and what is cut when the prompt does not fit;
- `scope`: where a middle ends (line/block modes, the suffix overlap) and the file's indentation style;
- `context`: repository context files read from disk;
- `pipeline`: one call from a request to ranked candidates, `fill(request, backend)`.
"""
