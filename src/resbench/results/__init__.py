"""Results: the seed's tables, extra columns, the comparison with the reference's runs, plots,
statistics, the reference's shipped figures."""
