"""results.json: its types and readers (`schema`), the names its readers share (`names`), head
rankings (`ranking`), markdown cells (`markdown`) and what a run ran on (`provenance`).

Plain Python below the variants, the analyses and the report, so each of them reads results
without importing what writes them. Importing this package imports nothing: `rank-heads` and
`compare` read results without torch."""
