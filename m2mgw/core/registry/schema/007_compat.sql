-- m2mgw registry, schema version 7: the compatibility profile of each terminal
-- (spec 1.6, D-230). NULL follows the deployment's [protocol] default_compat.
ALTER TABLE terminals ADD COLUMN compat TEXT;
