-- rejected_lines: CSV lines DuckDB could not parse (read_csv(..., store_rejects=true)), one row per
-- file and line however many scans or columns rejected it. error_types as DuckDB names them
-- (INVALID ENCODING, TOO MANY COLUMNS, MISSING COLUMNS, UNQUOTED VALUE, ...).
with errors as (
    select
        scans.file_path as source_file,
        errors.line,
        cast(errors.error_type as varchar) as error_type,
        errors.csv_line
    from reject_errors as errors
    inner join reject_scans as scans using (scan_id, file_id)
),

final as (
    select
        source_file,
        cast(line as bigint) as line,
        string_agg(distinct error_type, ', ' order by error_type) as error_types,
        min(csv_line) as raw_line
    from errors
    group by source_file, line
)

select * from final
order by source_file, line
