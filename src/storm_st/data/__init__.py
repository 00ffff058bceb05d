"""storm_st.data."""
