"""storm_st.pl."""
