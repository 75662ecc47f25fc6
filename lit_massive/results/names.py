"""Names results.json and every reader of it share: the baseline variant's, and the (L, H)
keys heads are ranked by."""

BASELINE = "baseline"
# what a selection, a sweep and rank-heads can rank heads by -> its (L, H) results.json key:
# the two attention scores, and every per-head figure of the attention internals
SCORES = {
    "first_token": "head_scores",
    "massive_tokens": "massive_token_scores",
    **{
        key: key
        for key in (
            "head_output_norm",
            "value_norm_first",
            "value_norm_rest",
            "massive_update_norm",
            "other_update_norm",
            "massive_update_cosine",
            "first_token_logit_gap",
            "query_norm",
            "key_norm_first",
            "key_norm_rest",
            "query_key_cos_first",
            "query_key_cos_rest",
        )
    },
}
