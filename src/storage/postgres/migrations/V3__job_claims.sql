-- Which runner holds a job: its renewals and its outcome apply only while it still does, so a
-- runner that stalled past its lease cannot clear the claim of the one that took the job over.
ALTER TABLE jobs ADD COLUMN claimed_by text;
