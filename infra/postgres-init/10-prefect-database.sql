-- Run once by the postgres image on an empty data volume (files in /docker-entrypoint-initdb.d).
-- POSTGRES_DB creates the registry database `hydracat`; the Prefect server gets its own database.
CREATE DATABASE prefect;
