"""storm_st.train."""
