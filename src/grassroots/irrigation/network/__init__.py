"""The district's network: pump stations, canals, structures, user associations, fields."""
